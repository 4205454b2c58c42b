"""Metering and rating: meters over usage events and request records, prices, taxes, credits,
contracts and entitlements."""
