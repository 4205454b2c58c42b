"""Server-rendered pages: the customer portal and the operators' control center."""
