"""The chatlog service: every inbound and outbound message, kept in Cassandra or SQLite.

It serves transcripts, conversation lists, search, stats and the training-data
export to the admin console, and applies retention and erasure.
"""
