"""Small shared helpers: input validation, atomic IO, registries, seeding."""
