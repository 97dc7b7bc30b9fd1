"""`metaselector serve`: per-user adaptation and scoring over HTTP, with a durable history store."""
