"""The vLLM server's whole life: install it, start it, know when it is ready, keep it up, stop it.

vLLM lives in its own virtual environment (VLLM_VENV), never in the site's: it pins its own torch
and a long tail of packages, and the site talks to it only over HTTP, so either can be upgraded
without breaking the other. `engine.client` is the site's client; this package runs the server.

vLLM starts an engine process and a worker under its API server, so it is started in a session of
its own and stopped as a whole process group: the API server alone going away would leave the
engine holding memory. Everything here is synchronous: the commands that use it do nothing else
while they wait.
"""
