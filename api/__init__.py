"""The TD3 distillation service's HTTP and persistence code: the FastAPI app, its
routes and services, the database models and migrations runner, the job lifecycle,
and the broker producer. Running processes (`td3 serve`, admin, demo) is `td3/`'s
job; running jobs is `worker/`'s.

Nothing here imports torch or the worker: the API parses uploads with the
torch-free `td3core.data` readers and enqueues distillation by task name.
"""
