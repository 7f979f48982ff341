"""`edgeai serve`: an OpenAI-compatible HTTP server for edgeai models (the `edgeai[server]` extra).

  errors.py      OpenAI-shaped error bodies and statuses
  params.py      request bodies checked into generation parameters
  scheduler.py   bounded queue, deadlines, cancellation; executors run jobs on an engine
  logprobs.py    per-token log probabilities by a scoring pass
  cache.py       exact-match output cache for deterministic requests
  requestlog.py  SQLite request log, feedback, export
  metrics.py     Prometheus text
  registry.py    the models served, by id
  app.py         the endpoints (Starlette)
  run.py         binding, announcing the port, signals
"""
