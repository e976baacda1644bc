"""Services own the transactions and the SQL; routes and the CLI call them."""
