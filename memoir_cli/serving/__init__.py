"""`memoir serve`: the edited model behind an OpenAI-compatible HTTP API.

- catalog.py: what the server offers (the `model` ids: all packs stacked, each pack, the base
  model) and which pack versions it serves;
- engine.py: one worker thread that owns the model, batches queued requests and generates;
- reload.py: watches local packs and Hub references, verifies new versions, hands them over;
- protocol.py: the OpenAI request and response shapes, and its error shape;
- app.py: the FastAPI application (endpoints, keys, metrics, draining).

The extra libraries come with `pip install "memoir-cli[serve]"`.
"""
