"""`MDLMTrainingArguments`: `TrainingArguments` plus the masked-diffusion / slack-CTC objective."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .canvas import CANVAS_PADDINGS, SLACK_RULES, get_schedule, inserts_slack
from .losses import _COLLAPSES as COLLAPSES
from .losses import NORMALIZATIONS


# What a checkpoint records of its run's objective, and where (compared when another run resumes from it).
OBJECTIVE_FIELDS = ("ce_weight", "ctc_weight", "slack_rule", "slack_prob", "ctc_collapse", "canvas_padding",
                    "noise_schedule", "time_eps", "antithetic_time", "loss_normalization")
OBJECTIVE_FILE = "hf_mdlm_objective.json"


@dataclass
class MDLMTrainingArguments(TrainingArguments):
    r"""`TrainingArguments` plus the masked-diffusion / slack-CTC objective (docs/objective.md §1-§5).

    Every field is a command-line flag of `examples/finetune.py` (through `transformers.HfArgumentParser`); the
    fields inherited from `TrainingArguments` keep their meaning.

    Parameters:
        > Loss weights

        ce_weight (`float`, defaults to `1.0`):
            Weight of the masked cross-entropy on the anchor alignment (lambda_ce).
        ctc_weight (`float`, defaults to `1.0`):
            Weight of the slack-CTC loss (lambda_ctc); `0` gives plain masked-diffusion SFT. `ce_weight` and
            `ctc_weight` must not both be 0.

        > The canvas: `<slack>` insertion and fill

        slack_rule (`str`, defaults to `"bernoulli"`):
            How many `<slack>` go into a response: `"bernoulli"` (each of the n + 1 gaps gets one with probability
            `slack_prob`), `"fixed"` (floor(slack_prob * n + 1/2) at random gaps) or `"none"`.
        slack_prob (`float`, defaults to `0.1`):
            The probability (`"bernoulli"`) or ratio (`"fixed"`) of `<slack>`, in [0, 1].
        canvas_padding (`str`, defaults to `"eos"`):
            What fills the canvas after the response: `"eos"` (as LLaDA: the model learns to stop) or `"slack"`.
        ctc_collapse (`str`, defaults to `"slack"`):
            The CTC's collapse map: `"slack"` (delete `<slack>`, keep repeated tokens: the slack-CTC objective) or
            `"ctc"` (standard CTC: merge runs of equal tokens, then delete `<slack>`; an ablation).

        > Noise

        noise_schedule (`str`, defaults to `"linear"`):
            The masking schedule m(t): `"linear"` or `"cosine"`.
        time_eps (`float`, defaults to `1e-3`):
            The smallest mask probability m(0), in (0, 1).
        antithetic_time (`bool`, defaults to `True`):
            Stratify the times t over the global batch (low-discrepancy sampling, as in MDLM).

        > Normalisation

        loss_normalization (`str`, defaults to `"canvas"`):
            Divide each example's loss by its canvas length (`"canvas"`, LLaDA's per-answer normalisation), by its
            number of masked tokens (`"masked"`), or the batch sum by the batch's response tokens
            (`"batch_tokens"`).

        > Changed default

        remove_unused_columns (`bool`, defaults to `False`):
            Kept `False`: the diffusion collator reads the prompt/response columns.
    """

    ce_weight: float = field(
        default=1.0, metadata={"help": "Weight of the masked cross-entropy on the anchor alignment (lambda_ce)."}
    )
    ctc_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the slack-CTC loss (lambda_ctc); 0 gives plain masked-diffusion SFT."},
    )
    slack_rule: str = field(
        default="bernoulli",
        metadata={"help": "How many <slack> to insert into a response: 'bernoulli' (each of the n+1 gaps gets one "
                          "with probability slack_prob), 'fixed' (floor(slack_prob*n + 1/2) at random gaps) or "
                          "'none'."},
    )
    slack_prob: float = field(
        default=0.1,
        metadata={"help": "Probability (bernoulli) or ratio (fixed) of <slack>, in [0, 1]."},
    )
    ctc_collapse: str = field(
        default="slack",
        metadata={"help": "The CTC's collapse map: 'slack' (delete <slack>, keep repeats: the slack-CTC objective) "
                          "or 'ctc' (standard CTC: merge runs of equal tokens, then delete <slack>; an ablation)."},
    )
    canvas_padding: str = field(
        default="eos",
        metadata={"help": "Fill the canvas after the response with 'eos' (LLaDA: the model learns to stop) or "
                          "'slack'."},
    )
    noise_schedule: str = field(default="linear", metadata={"help": "Masking schedule: 'linear' or 'cosine'."})
    time_eps: float = field(default=1e-3, metadata={"help": "Smallest mask probability m(0) of the schedule."})
    antithetic_time: bool = field(
        default=True,
        metadata={"help": "Stratify the times t over the global batch (low-discrepancy sampling, as in MDLM)."},
    )
    loss_normalization: str = field(
        default="canvas",
        metadata={"help": "Divide each example's weighted loss by its canvas length ('canvas', LLaDA's "
                          "per-answer normalisation), by its number of masked tokens ('masked'), or divide the "
                          "batch sum by the number of response tokens in the batch ('batch_tokens')."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the diffusion collator needs the prompt/response columns."}
    )

    def objective_settings(self) -> dict:
        """The fields that define what is trained (the loss, the canvas, the noise): a run resumed from another
        folder's checkpoint must have the same (each checkpoint records them, `OBJECTIVE_FILE`)."""
        return {name: getattr(self, name) for name in OBJECTIVE_FIELDS}

    @property
    def canvas_holds_slack(self) -> bool:
        """Whether the training canvases hold `<slack>` (inserted, or as fill): the model learns to emit it."""
        return inserts_slack(self.slack_rule, self.slack_prob) or self.canvas_padding == "slack"

    @property
    def needs_slack_token(self) -> bool:
        """Whether the run needs a `<slack>` id: its canvases hold `<slack>`, or the CTC loss, whose blank it is, is on."""
        return self.canvas_holds_slack or self.ctc_weight > 0

    def __post_init__(self):
        super().__post_init__()
        if self.ce_weight < 0 or self.ctc_weight < 0 or self.ce_weight + self.ctc_weight == 0:
            raise ValueError(
                f"ce_weight={self.ce_weight} and ctc_weight={self.ctc_weight} must be >= 0 and not both 0"
            )
        if self.slack_rule not in SLACK_RULES:
            raise ValueError(f"slack_rule={self.slack_rule!r}: expected one of {SLACK_RULES}")
        if not 0.0 <= self.slack_prob <= 1.0:
            raise ValueError(f"slack_prob={self.slack_prob} must be in [0, 1]")
        if self.ctc_collapse not in COLLAPSES:
            raise ValueError(f"ctc_collapse={self.ctc_collapse!r}: expected one of {COLLAPSES}")
        if self.canvas_padding not in CANVAS_PADDINGS:
            raise ValueError(f"canvas_padding={self.canvas_padding!r}: expected one of {CANVAS_PADDINGS}")
        if self.loss_normalization not in NORMALIZATIONS:
            raise ValueError(f"loss_normalization={self.loss_normalization!r}: expected one of {NORMALIZATIONS}")
        if not 0.0 < self.time_eps < 1.0:  # 0 would give t = 0 examples nothing masked to learn from
            raise ValueError(f"--time_eps {self.time_eps} must be in (0, 1)")
        get_schedule(self.noise_schedule, self.time_eps)  # raises on an unknown name
