"""Code that ships inside every Bento as well as running in the stages, so that serving preprocesses exactly as
training did: image decoding (imaging), table row encoding (rows), tokenizing text (text), train/serve skew
checks (skew).

Self-contained: these modules import nothing else from the project. The Bento's build context is this folder
(SHIPPED in tasks/package, `include` in bento/bentofile.yaml); a test checks the two lists agree.
"""
