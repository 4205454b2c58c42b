"""Notifications: email over SMTP and the usage, error-rate and invoice notices."""
