"""Real parts that the test suites and the benchmarks share.

Processes on free ports and their health (`harness.support`), real Redis
servers and clusters (`harness.redis_servers`), events as a channel sends them
(`harness.events`), stand-ins for the Graph API, the NLU and the chatlog
(`harness.standins`) and a dialogue service stand-in for the gateway
(`harness.dialogue_server`). Nothing here is a pytest fixture: the fixtures
stay in the suites' ``conftest.py`` files and build on these.
"""
