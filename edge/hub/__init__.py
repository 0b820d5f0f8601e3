"""The hub role (docs/hub.md): STOW-RS in from many site appliances, each with its own bearer
token; instances kept under <store_dir>/<site>/<study>/<series>/<sop>.dcm, recorded per site
in the state database and, with `[hub] forward`, queued in the outbox for the destinations.

Modules: multipart (streaming splitter, pure), tokens (which site), store (checks and atomic
placement), records (the tables and the status), service (the work behind HTTP), stow (the
Starlette app), server (uvicorn on a thread), cli (`edge hub status`).
"""
