"""The worker process shell: serves the queues by running batches with the sandbox library."""
