"""The HTTP side: the ASGI app (Starlette) and its server (uvicorn) inside our task group."""
