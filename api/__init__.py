"""The TD3 distillation service: FastAPI app, services, CLI (serve/admin/demo).

Nothing here imports torch at module load: the API parses uploads with the
torch-free `td3core.data` readers and hands distillation to the Celery worker.
"""
