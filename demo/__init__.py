"""Demo traffic for the local stack."""
