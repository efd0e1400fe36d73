"""Language-model evaluation: perplexity, multiple-choice log-likelihood and exact-match
generation, each under any inference-time method (SCMoE, MoTE masks, C3PO re-mixing,
top-p threshold, experts per token).

```python
from jaxmoe.eval.lm import EvalOptions, Method, evaluate, read_tasks
res = evaluate(params, cfg.model, tokenizer, read_tasks(["held_out.txt", "choices.jsonl"]),
               Method(contrastive="scmoe", beta=0.5), EvalOptions(batch_size=8))
```

``jaxmoe eval-lm`` is the command line of :func:`evaluate`.
"""

from jaxmoe.eval.lm.methods import Method, setup_config
from jaxmoe.eval.lm.runner import EvalOptions, Evaluator, compare, evaluate, format_table, headline
from jaxmoe.eval.lm.tasks import (ChoiceExample, GenerationExample, Task, answers_match, extract_last_number,
                                  read_task, read_tasks, reference_answer)

__all__ = ["ChoiceExample", "EvalOptions", "Evaluator", "GenerationExample", "Method", "Task", "answers_match",
           "compare", "evaluate", "extract_last_number", "format_table", "headline", "read_task", "read_tasks",
           "reference_answer", "setup_config"]
