"""Methods that exist only for the tests (registered when their module is imported)."""
