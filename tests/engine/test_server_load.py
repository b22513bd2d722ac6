"""engine.vllm_client reads vLLM's load from its /metrics (Prometheus text), over a real socket."""

import httpx

from engine import vllm_client
from engine.vllm_client import Failed, ServerLoad
from tests.fake_vllm import FakeVLLM

# As vLLM 0.32 with two engines writes it (trimmed): HELP and TYPE lines, labels, a counter's
# _total and _created samples, and a histogram whose buckets must not be mistaken for gauges.
TWO_ENGINES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen2-7b-instruct"} 2.0
vllm:num_requests_running{engine="1",model_name="qwen2-7b-instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen2-7b-instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="qwen2-7b-instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen2-7b-instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="qwen2-7b-instruct"} 0.125
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="qwen2-7b-instruct"} 1200.0
vllm:generation_tokens_created{engine="0",model_name="qwen2-7b-instruct"} 1.764e+09
vllm:generation_tokens_total{engine="1",model_name="qwen2-7b-instruct"} 34.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="a {b} c"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="qwen2-7b-instruct"} 17.0
python_gc_objects_collected_total{generation="0"} 12345.0
odd_sample NaN
"""


def test_requests_and_tokens_are_summed_over_engines_and_the_kv_cache_use_averaged():
    # Each engine has a KV cache of its own: a sum of their shares could pass 100%.
    assert vllm_client.server_load(TWO_ENGINES) == ServerLoad(
        running=3.0, waiting=4.0, kv_cache_usage=0.1875, generation_tokens=1234.0
    )


def test_a_vllm_before_0_10_names_the_kv_cache_gauge_after_the_gpu():
    text = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_requests_running{model_name="m"} 0.0\n'
    assert vllm_client.server_load(text) == ServerLoad(0.0, None, 0.5, None)


def test_samples_are_parsed_whatever_their_labels_say():
    samples = vllm_client.parse_metrics(TWO_ENGINES)
    assert samples["vllm:time_to_first_token_seconds_bucket"] == [0.0]
    assert samples["python_gc_objects_collected_total"] == [12345.0]
    assert samples["vllm:num_requests_running"] == [2.0, 1.0]
    assert "odd_sample" not in samples
    assert not any(name.startswith("#") for name in samples)


async def test_the_load_is_read_from_the_fake_while_it_generates(fake_vllm: FakeVLLM):
    fake_vllm.fault, fake_vllm.fault_after = "stall", 3
    fake_vllm.waiting, fake_vllm.kv_cache_usage = 2, 0.4
    tokens_before = fake_vllm.generated_tokens  # a counter over the whole run, as vLLM's is
    body = {"model": "qwen2-7b-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", f"{fake_vllm.base_url}/chat/completions", json=body) as response:
            # Held in a name: an async generator left by `break` and dropped is closed by asyncio
            # soon after, and httpx closes the connection of an unfinished response, which ends
            # the generation (vLLM would abort it) while /metrics is being read.
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data:") and "content" in line and '"content":""' not in line:
                    break  # the first delta is out: the request is generating
            # A stalled generation: the three tokens are out, the fourth never comes.
            fake_vllm.wait_for(lambda: fake_vllm.generated_tokens >= tokens_before + 3)
            load = await vllm_client.read_load()
            assert fake_vllm.disconnects() == 0

    assert load == ServerLoad(
        running=1.0, waiting=2.0, kv_cache_usage=0.4, generation_tokens=fake_vllm.generated_tokens
    )


async def test_an_unreachable_server_is_a_readable_failure(fake_vllm: FakeVLLM):
    fake_vllm.fault = "refuse"
    load = await vllm_client.read_load()
    assert isinstance(load, Failed)
    assert "not reachable" in load.message


async def test_a_server_without_metrics_is_a_readable_failure(fake_vllm: FakeVLLM, settings):
    # A server that answers /metrics with 404 (an OpenAI-compatible server other than vLLM).
    settings.VLLM_BASE_URL = f"{fake_vllm.root}/elsewhere/v1"
    load = await vllm_client.read_load()
    assert load == Failed("vLLM answers /metrics with 404")
