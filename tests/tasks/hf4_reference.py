"""Run transformers 4.x's QuestionAnsweringPipeline (removed in transformers 5) and record what it saw and said.

Run with a transformers 4.x first on the path (tests/tasks/test_question_answering.py does, in a subprocess):

    PYTHONPATH=.cache/transformers4 python tests/tasks/hf4_reference.py REQUEST.json RESULT.json

REQUEST.json: {"runs": [{"model": folder, "pairs": [[question, context], ...], "max_seq_len": int, "doc_stride": int,
"max_answer_len": int, "padding_side": optional}, ...]}. RESULT.json: {"transformers": version, "runs": [{"answers":
[{"score", "start", "end", "answer"}, ...], "windows": [[{"input_ids", "start", "end"}, ...] per pair]}, ...]}: per
run, the pipeline's answer for every pair, and for every window the token ids it fed the model and the start/end
logits the model returned (float32 values). One process serves every run: importing transformers is the slow part.
"""

from __future__ import annotations

import json
import sys
import warnings


def main(request_path: str, result_path: str) -> None:
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(f"transformers {transformers.__version__} has no QuestionAnsweringPipeline; put 4.x first")
    warnings.filterwarnings("ignore")
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    runs = [_run(transformers, run) for run in request["runs"]]
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "runs": runs}, f)


def _run(transformers, request: dict) -> dict:
    tokenizer = transformers.AutoTokenizer.from_pretrained(request["model"], local_files_only=True)
    if request.get("padding_side"):
        tokenizer.padding_side = request["padding_side"]
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(request["model"], local_files_only=True)
    pipe = transformers.pipeline("question-answering", model=model.eval(), tokenizer=tokenizer, device="cpu")
    seen: list[dict] = []
    forward = pipe._forward

    def recording_forward(inputs):  # what the pipeline fed the model, and the logits it got back
        out = forward(inputs)
        seen.append(
            {
                "input_ids": inputs["input_ids"][0].tolist(),
                "start": out["start"][0].float().tolist(),
                "end": out["end"][0].float().tolist(),
            }
        )
        return out

    pipe._forward = recording_forward
    answers, windows = [], []
    for question, context in request["pairs"]:
        seen.clear()
        found = pipe(
            question=question,
            context=context,
            max_seq_len=request["max_seq_len"],
            doc_stride=request["doc_stride"],
            max_answer_len=request["max_answer_len"],
        )
        answers.append({k: (float(v) if k == "score" else v) for k, v in found.items()})
        windows.append(list(seen))
    return {"answers": answers, "windows": windows}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
