"""PostgreSQL: the predictions table, its migrations and the repository the services use."""
