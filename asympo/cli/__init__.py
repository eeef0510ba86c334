"""The user's side: the `asympo` command, its REST client, the local stack and job reports."""
