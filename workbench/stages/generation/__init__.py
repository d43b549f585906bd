"""Text generation with a key/value cache: export of causal LMs, the decoding loop over any engine's runner,
weight-only precision, accuracy on the generation budget, the generation benchmark and the summary section.

- :mod:`.export`: :func:`export_decoder` (one ONNX graph for the prompt and the decode steps, cache in and out),
  :func:`fuse_decoder`, :func:`read_decoder_spec`;
- :mod:`.generate`: :func:`generate` / :func:`generate_tokens` / :func:`stream` over any ``Runner``;
- :mod:`.accuracy`: :func:`evaluate_generation` (teacher-forced agreement, perplexity ratio, logits cosine,
  greedy-continuation agreement), :func:`diagnose_decoder`, :func:`autofix_decoder`;
- :mod:`.benchmark`: :func:`benchmark_generation` (time to first token, inter-token latency, tokens/s);
- :mod:`.summary`: :func:`generation_summary`, the `generation` section of summary.json.
"""
