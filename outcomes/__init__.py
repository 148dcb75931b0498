"""The outcome store: routing decisions and the outcomes a deployment reports for them.

Decisions (a Route answer, a scored prompt) are recorded by the serving process; outcomes arrive with
the `Feedback` RPC or `lmroute-export import-outcomes`; adaptation (lmroute.adapt) reads both back.
SQLite (WAL) is the embedded default, PostgreSQL (by DSN) the store that replicas share.
"""
