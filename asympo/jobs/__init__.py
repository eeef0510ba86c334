"""What a job is: its spec (validated YAML) and the records the services keep about it in Redis."""
