"""Celery worker: runs distillation jobs (td3core.pipeline.run_job) from the queue.

The parent worker process never imports torch (no CUDA before fork); the task
imports the library inside the child when a job starts."""
