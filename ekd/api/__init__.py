"""HTTP layer: FastAPI routes, content negotiation and error mapping. No business logic here."""
