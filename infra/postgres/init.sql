-- One database per service on the shared PostgreSQL (compose: docker-entrypoint-initdb.d).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
