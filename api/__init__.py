"""The doors for programs onto the chat turn: REST (`rest`), model-compose (`workflows`), OpenAI (`openai_compat`)."""
