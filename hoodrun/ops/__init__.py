"""Operations: what the platform learns about itself: alerts from its monitoring, the fleet of
running processes and what their gateways see, cordons, and service levels."""
