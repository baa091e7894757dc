"""Between the supervisor and its child processes: the channel, the child runtime, shared metrics."""
