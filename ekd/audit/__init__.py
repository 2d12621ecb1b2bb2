"""NEN 7513 audit logging: append-only, hash-chained per organisation, shown as FHIR
AuditEvent in the shapes of IHE Basic Audit Log Patterns (BALP)."""
