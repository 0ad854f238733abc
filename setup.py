from setuptools import setup

setup(
    name="fairseq_bahdanau",
    version="0.2.0",
    description="The attention GRU encoder-decoder of Bahdanau et al. (2015) as a fairseq plugin (--user-dir)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["fairseq_bahdanau", "fairseq_bahdanau.model", "fairseq_bahdanau.model.decoder",
              "fairseq_bahdanau.deploy", "fairseq_bahdanau.analysis"],
    python_requires=">=3.10",
    install_requires=[
        # the Makefile's constraints.txt pins torch 2.13.0, CPU or CUDA build (the whole suite, Python 3.10-3.13);
        # torch 2.11 (the GPU machines') is tested too: the model side's tests on Python 3.12 (examples/gpu)
        "torch>=1.13",
        # fairseq's main branch with its Python 3.11+ fixes (import name fairseq), on every Python: PyPI's
        # fairseq 0.12.2 does not import on 3.11+ and its source does not build on 3.10.
        "fairseq-fixed==0.12.3.1",
        "sentencepiece",
        "sacrebleu>=2.0",
    ],
    extras_require={
        "test": ["pytest", "selenium", "ruff"],
        "plot": ["matplotlib"],
        # the ONNX export (python -m fairseq_bahdanau.model.export): torch's exporter and ONNX Runtime's quantization
        "export": ["onnx>=1.16", "onnxscript>=0.5", "onnxruntime>=1.20"],
        # a deployment without torch or fairseq (the filter and load()): pip install --no-deps fairseq_bahdanau
        # first, then these (pip install onnxruntime numpy sentencepiece)
        "runtime": ["onnxruntime>=1.20", "numpy", "sentencepiece"],
        # the HTTP service (python -m fairseq_bahdanau.deploy.serve --port P) on top of the runtime
        "serve": ["starlette>=0.37", "uvicorn>=0.29", "prometheus-client>=0.20"],
        # the service as a Ray Serve application (python -m fairseq_bahdanau.deploy.ray_serve), with serve's extra
        "ray": ["ray[serve]>=2.40"],
    },
    package_data={"fairseq_bahdanau.deploy": ["static/*"]},
)
