"""Small real datasets a team might bring, in each format ingest takes, none of them the digits: text class names,
categorical columns with missing values, colour that carries the class, odd image sizes.

Each writer makes files on disk exactly as a user would have them and returns what a test needs to know.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# Three colours of (almost) one luminance (0.299 R + 0.587 G + 0.114 B ≈ 0.45): converted to grayscale, the classes
# look alike; in colour they are told apart at a glance.
COLOURS = {"ember": (0.95, 0.25, 0.35), "moss": (0.25, 0.58, 0.15), "sky": (0.20, 0.40, 1.00)}


def loans_csv(path: Path, rows: int = 600, seed: int = 0, duplicates: int = 30) -> dict:
    """A loans table as real exports are: numeric and categorical columns, a few missing values, the class in
    `decision` as text (approved / declined / review), `review` a minority about an eighth the size of the largest
    class, and `duplicates` rows exported twice (one of them with another decision). The class follows the numbers
    (income, debt) and the region."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    decision = rng.choice(["approved", "declined", "review"], size=rows, p=[0.47, 0.47, 0.06])
    centre = {"approved": (80.0, 10.0), "declined": (30.0, 40.0), "review": (55.0, 25.0)}
    income = np.array([centre[d][0] for d in decision]) + rng.normal(0, 4, rows)
    debt = np.array([centre[d][1] for d in decision]) + rng.normal(0, 3, rows)
    region = np.where(decision == "review", rng.choice(["north", "east"], rows), rng.choice(["south", "west"], rows))
    frame = pd.DataFrame({"income_k": income.round(1), "debt_k": debt.round(1), "region": region,
                          "age": rng.integers(21, 70, rows), "decision": decision})
    frame.loc[rng.choice(rows, rows // 50, replace=False), "income_k"] = np.nan  # a few missing values
    frame.loc[rng.choice(rows, rows // 50, replace=False), "region"] = None
    copies = frame.iloc[rng.choice(rows, duplicates, replace=False)].copy()
    copies.iloc[0, copies.columns.get_loc("decision")] = "declined" if copies.iloc[0]["decision"] != "declined" \
        else "approved"  # the same applicant, decided differently: reported by validate, kept in one split
    frame = pd.concat([frame, copies], ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return {"label": "decision", "classes": ["approved", "declined", "review"], "frame": frame}


def colour_folder(root: Path, per_class: int = 40, size: tuple[int, int] = (18, 14), seed: int = 0) -> dict:
    """One folder per colour name (ember, moss, sky) of RGB JPEGs of random texture and brightness: only the colour
    tells the classes apart. Images are H×W = `size` (not square, not a power of two)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            texture = rng.uniform(0.3, 1.0, size) * rng.uniform(0.6, 1.0)  # brightness varies more than the hues differ
            pixels = (texture[..., None] * np.array(colour) * 255).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{name}-{i:03d}.jpg", quality=95)
    return {"classes": sorted(COLOURS), "size": size}


def colour_image(name: str, size: tuple[int, int] = (18, 14), seed: int = 99) -> bytes:
    """One JPEG of the class `name`, drawn like colour_folder's, as the bytes a client uploads."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.uniform(0.3, 1.0, size)[..., None] * 0.8 * np.array(COLOURS[name]) * 255).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def shapes(n_per_class: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale 8-bit images of three shapes (a bar, a cross, a ring) at random offsets, with their shape names."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    images, labels = [], []
    for name in ("bar", "cross", "ring"):
        for _ in range(n_per_class):
            cy, cx = rng.integers(side // 3, side - side // 3, 2)
            if name == "bar":
                mask = np.abs(yy - cy) <= 1
            elif name == "cross":
                mask = (np.abs(yy - cy) <= 1) | (np.abs(xx - cx) <= 1)
            else:
                radius = np.hypot(yy - cy, xx - cx)
                mask = (radius > side / 5) & (radius < side / 5 + 2)
            image = np.where(mask, rng.uniform(180, 255), rng.uniform(0, 40, (side, side)))
            images.append(image.astype(np.uint8))
            labels.append(name)
    return np.stack(images), np.asarray(labels)


def shapes_arrays(folder: Path, n_per_class: int = 40, side: int = 12, seed: int = 1) -> dict:
    """images.npy (N×H×W uint8) and labels.npy of text class names (a NumPy unicode array, no pickle)."""
    images, labels = shapes(n_per_class, side, seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return {"classes": ["bar", "cross", "ring"], "images": images, "labels": labels}


def shapes_idx(folder: Path, n_per_class: int = 40, side: int = 12, seed: int = 2) -> dict:
    """MNIST-format IDX files of the shapes; IDX labels are numbers, so classes are the codes 3, 7, 12 (ordered as
    numbers: '12' after '7')."""
    images, names = shapes(n_per_class, side, seed)
    codes = {"bar": 3, "cross": 7, "ring": 12}
    labels = np.asarray([codes[n] for n in names], dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / f"train-{kind}-ubyte").write_bytes(header + array.tobytes())
    return {"classes": ["3", "7", "12"], "images": images, "labels": labels}


QUEUES = {  # words that lean to one queue; every ticket also draws from the shared words below
    "billing": "invoice charge charged refund payment card bill twice price subscription receipt overcharged".split(),
    "technical": "error crash login app page loading bug broken password reset screen update slow".split(),
    "shipping": "parcel delivery courier tracking arrived late address package lost delayed box".split(),
}
SHARED = "hello hi please help thanks my the a is not it was since yesterday order account urgent again".split()


def tickets(rows: int = 600, seed: int = 0, minority: float = 0.15) -> "pd.DataFrame":
    """Support tickets as a helpdesk exports them: a free-text `message`, a `channel` category, the queue as a word
    label in `queue`; `shipping` a minority of `minority`; the text says the queue through a few of its words among
    shared ones, with case, accents, emoji, HTML entities and stray control characters as real messages have them."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    share = (1 - minority) / 2
    queue = rng.choice(list(QUEUES), size=rows, p=[share, share, minority])
    decor = ["", "", "", " 😀", " &amp; more", " Café", "\x00", " !!!"]
    messages = []
    for q in queue:
        words = list(rng.choice(SHARED, rng.integers(4, 12))) + list(rng.choice(QUEUES[q], rng.integers(1, 4)))
        rng.shuffle(words)
        text = " ".join(words)
        messages.append((text.capitalize() if rng.random() < 0.5 else text.upper() if rng.random() < 0.1 else text)
                        + decor[rng.integers(len(decor))])
    return pd.DataFrame({"message": messages, "channel": rng.choice(["email", "chat", "phone"], rows), "queue": queue})


def tickets_csv(path: Path, rows: int = 600, seed: int = 0, duplicates: int = 40, text_only: bool = False) -> dict:
    """`tickets` as a CSV, `duplicates` of them sent again (the same words, in other case: one example to the
    model), the `channel` column dropped with `text_only`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = tickets(rows, seed)
    copies = frame.iloc[rng.choice(rows, duplicates, replace=False)].copy()
    copies["message"] = copies["message"].str.lower()
    frame = pd.concat([frame, copies], ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if text_only:
        frame = frame.drop(columns=["channel"])
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return {"label": "queue", "classes": sorted(QUEUES), "frame": frame}


def tickets_folder(root: Path, per_class: int = 60, seed: int = 3) -> dict:
    """scikit-learn's `load_files` layout: one folder per queue of .txt files, one of them saved in cp1252 (not
    UTF-8), as an old mail export leaves them."""
    frame = tickets(per_class * 3, seed, minority=1 / 3)
    for i, (message, queue) in enumerate(zip(frame["message"], frame["queue"])):
        (root / queue).mkdir(parents=True, exist_ok=True)
        (root / queue / f"{i:04d}.txt").write_text(message.replace("\x00", ""), encoding="utf-8")
    legacy = root / "billing" / "legacy.txt"
    legacy.write_bytes("Refund for my café invoice – charged twice".encode("cp1252"))
    return {"classes": sorted(QUEUES), "legacy": legacy}


def transactions_csv(path: Path, rows: int = 900, seed: int = 0) -> dict:
    """A card-transactions table whose class follows sharp thresholds, as business rules make them: `fraud` when
    a large amount comes from a new account, `review` when the merchant's risk score falls in an odd band of ten
    (0-9 ok, 10-19 review, ...) and the amount is over 200, else `ok`; a channel category and a few gaps
    (missing amounts count as small). Gradient-boosted trees cut such steps exactly; a network smooths them."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    amount = rng.uniform(0, 1000, rows).round(2)
    tenure = rng.uniform(0, 10, rows).round(2)
    risk = rng.uniform(0, 100, rows).round(1)
    decision = np.where((amount > 700) & (tenure < 3), "fraud",
                        np.where(((risk // 10) % 2 == 1) & (amount > 200), "review", "ok"))
    frame = pd.DataFrame({"amount": amount, "tenure_years": tenure, "merchant_risk": risk,
                          "channel": rng.choice(["web", "shop", "phone"], rows), "hour": rng.integers(0, 24, rows),
                          "decision": decision})
    gaps = rng.choice(np.flatnonzero(frame["amount"] < 150), rows // 60, replace=False)
    frame.loc[gaps, "amount"] = np.nan
    frame.loc[rng.choice(rows, rows // 60, replace=False), "channel"] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return {"label": "decision", "classes": ["fraud", "ok", "review"], "frame": frame}
