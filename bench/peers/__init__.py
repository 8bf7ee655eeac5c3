"""The peers: the same hello world served by well-known servers, measured beside our phases in the same run.

Every app here answers `GET /` with 200, `Content-Type: text/plain` and `Hello, World!`, and nothing else, so
the bench compares servers, not applications. How each one is started is in bench/targets.py.
"""
