"""The model server: `client` talks to vLLM and yields typed events; `server` installs, starts and supervises it."""
