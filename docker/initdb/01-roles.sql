-- The owner runs migrations; the app role gets DML only (granted by the migrations) and is neither
-- superuser nor BYPASSRLS, so row-level security applies to it.
CREATE ROLE vca_owner LOGIN PASSWORD 'vca_owner_password';
CREATE ROLE vca_app LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD 'vca_app_password';
CREATE DATABASE vca OWNER vca_owner;
