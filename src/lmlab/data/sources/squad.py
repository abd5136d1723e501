"""The SQuAD format: v1.1 / v2.0 JSON flattened to one row per question (``id``, ``title``,
``context``, ``question``, ``answers``), and the QA row check (each answer is at its
``answer_start`` in the context)."""

from __future__ import annotations

from lmlab.errors import LmlabError


def is_squad(document) -> bool:
    """A whole-file JSON document that looks like SQuAD (an object with a 'data' list)."""
    return isinstance(document, dict) and isinstance(document.get("data"), list)


def read_squad(path, document, bad):
    """A parsed SQuAD file -> (columns, number of rows, describe(row) -> where)."""
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise LmlabError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    rows, at = [], []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_items(article, "paragraphs", f"{path}: article {a}")):
            context = paragraph.get("context")
            for qa in _items(paragraph, "qas", f"{path}: article {a}, paragraph {p}"):
                where = f"{path}: article {a}, paragraph {p}, question {qa.get('id')}"
                answers = _answers(qa)
                if answers is None:
                    bad.add(
                        where,
                        "malformed answers",
                        "malformed answers (expected text and answer_start)",
                    )
                    continue
                qid = qa.get("id")
                row = {
                    "id": None if qid is None else str(qid),
                    "title": article.get("title", ""),
                    "context": context,
                    "question": qa.get("question"),
                    "answers": answers,
                }
                rows.append(row)
                at.append(where)
    columns = {name: [r[name] for r in rows] for name in features()}
    return columns, len(rows), lambda i: at[i]


def _items(parent, key, where):
    """parent[key], a list of objects, checked so that a malformed file names its place."""
    items = parent.get(key, []) if isinstance(parent, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise LmlabError(f"{where}: malformed SQuAD file (expected a list of objects in {key!r})")
    return items


def _answers(qa):
    if qa.get("is_impossible"):
        return {"text": [], "answer_start": []}
    answers = qa.get("answers", [])
    try:
        texts = [a["text"] for a in answers]
        starts = [a["answer_start"] for a in answers]
    except (KeyError, TypeError):
        return None
    if not all(isinstance(t, str) for t in texts) or not all(type(s) is int for s in starts):
        return None
    return {"text": texts, "answer_start": starts}


def features():
    """The features of the rows ``read_squad`` yields."""
    from datasets import Features, List, Value

    answers = {"text": List(Value("string")), "answer_start": List(Value("int32"))}
    text = Value("string")
    return Features(id=text, title=text, context=text, question=text, answers=answers)


def check_answers(columns, problems):
    """Each answer text is found at its answer_start in the context."""
    for i, (context, answer) in enumerate(zip(columns["context"], columns["answers"])):
        if context is None or answer is None:
            continue
        texts, starts = answer.get("text") or [], answer.get("answer_start") or []
        if len(texts) != len(starts):
            detail = f"{len(texts)} answer texts but {len(starts)} answer_start values"
            problems.setdefault(i, ("malformed answers", detail))
            continue
        for text, start in zip(texts, starts):
            found = context[start : start + len(text)] if start >= 0 else ""
            if found != text:
                detail = f"answer {text!r} is not at answer_start {start} (found {found!r})"
                problems.setdefault(i, ("answer not at answer_start", detail))
                break
