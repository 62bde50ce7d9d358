"""A team chat split over blueprints (docs/howto/blueprints.md, docs/howto/rooms.md).

Run it from docs/examples::

    sanic teamchat.app:app --workers 4

tests/test_docs_examples.py runs it.
"""
