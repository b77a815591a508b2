"""Jobs: the job file model, and the runners behind every CLI command."""
