# The python backend must run Python {py}, the notebook's: function.pt is bytecode of that version.
# nvidia-pytriton without its dependencies: it only brings the stub (its metadata would pin numpy<2).
# requirements.txt: the installed packages the functions use, pinned to the notebook's versions; one pip run with
# torch, so that pip refuses a requirement that would replace the notebook's torch rather than do it.
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python{py} python{py}-venv libpython{py} \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/tritonnb-requirements.txt
RUN python{py} -m venv /opt/model-env \
    && /opt/model-env/bin/pip install --no-cache-dir "torch=={torch}" "{numpy}" "cloudpickle=={cloudpickle}" \
        -r /tmp/tritonnb-requirements.txt \
    && /opt/model-env/bin/pip install --no-cache-dir --no-deps "nvidia-pytriton==0.7.0" \
    && cp {site}/pytriton/tritonserver/python_backend_stubs/{py}/triton_python_backend_stub \
          /opt/tritonserver/backends/python/
# the stub links libraries of the wheel (nvidia_pytriton.libs) and this Python's libpython; it finds the
# venv's packages through the python on PATH
ENV LD_LIBRARY_PATH={site}/nvidia_pytriton.libs:$LD_LIBRARY_PATH
ENV PATH=/opt/model-env/bin:$PATH
RUN ! ldd /opt/tritonserver/backends/python/triton_python_backend_stub | grep 'not found'
