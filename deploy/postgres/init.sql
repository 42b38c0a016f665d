-- First-start initialisation of the compose PostgreSQL (mounted into /docker-entrypoint-initdb.d/,
-- so it runs once, on an empty data volume, as the superuser).
-- Two databases, each owned by its own login role: the training service's job store and the
-- MLflow tracking/registry store. Owning the database is enough on PostgreSQL 15, where the
-- `public` schema belongs to the database owner.
-- Example passwords: change them here AND in deploy/docker-compose.yml (HEIMDALL_JOB_STORE_URL,
-- the mlflow --backend-store-uri) before running anywhere but a laptop. A changed password takes
-- effect only on a new volume, or with ALTER ROLE on a running server.

CREATE ROLE heimdall LOGIN PASSWORD 'heimdall-change-me';
CREATE DATABASE heimdall OWNER heimdall;

CREATE ROLE mlflow LOGIN PASSWORD 'mlflow-change-me';
CREATE DATABASE mlflow OWNER mlflow;
