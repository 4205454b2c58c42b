"""Operations: what the platform learns about itself from its monitoring (alerts)."""
