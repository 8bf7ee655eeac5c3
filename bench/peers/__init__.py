"""The peers: well-known servers doing our phases' work, measured beside them in the same run.

Every app here answers `GET /` with 200, `Content-Type: text/plain` and `Hello, World!`, so the bench
compares servers, not applications. The peers set up to serve more (bench/targets.py, `serves`) send our demo
app's bytes for `GET /json` and `GET /users/{id}` through their own ecosystem's smallest router, and the
harness's files under /static/ the way that server serves files. How each one is started is in
bench/targets.py; nginx's configuration is nginx.conf, hyper's program is hyper/src/main.rs.
"""
