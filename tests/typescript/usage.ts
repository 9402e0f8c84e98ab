// What a frontend writes against the client generated from /openapi.json (openapi-typescript's
// types, openapi-fetch's client). tests/api/test_typescript_client.py type-checks it with tsc.
import createClient from "openapi-fetch";
import type { components, operations, paths } from "./api";

type ApiError = components["schemas"]["ErrorBody"] | components["schemas"]["ValidationErrorBody"];
type CallDetail = components["schemas"]["CallDetailOut"];

// Operation ids are the route names.
type CallPage = operations["list_calls"]["responses"][200]["content"]["application/json"];
type OutboundCall = operations["create_outbound_call"]["requestBody"]["content"]["application/json"];
// @ts-expect-error FastAPI's default ids (path and method spelt out) are gone.
type Gone = operations["list_calls_api_v1_tenants__tenant_id__calls_get"];

const client = createClient<paths>({
  baseUrl: "http://localhost:8000",
  headers: { Authorization: "Bearer vca_example" },
});

function describe(error: ApiError): string {
  return typeof error.detail === "string" ? `${error.code}: ${error.detail}` : error.code;
}

export async function placeCall(tenantId: string, phoneNumberId: string): Promise<string> {
  const body: OutboundCall = { to: "+14155550123", phone_number_id: phoneNumberId };
  const { data, error } = await client.POST("/api/v1/tenants/{tenant_id}/calls", {
    params: { path: { tenant_id: tenantId } },
    body,
  });
  if (error) throw new Error(describe(error));
  return data.status;
}

export async function recentCallIds(tenantId: string): Promise<string[]> {
  const { data, error } = await client.GET("/api/v1/tenants/{tenant_id}/calls", {
    params: { path: { tenant_id: tenantId }, query: { limit: 10, status: "completed" } },
  });
  if (error) throw new Error(describe(error));
  const page: CallPage = data;
  return page.items.map((call) => call.id);
}

export async function transcript(tenantId: string, callId: string): Promise<string[]> {
  const { data, error } = await client.GET("/api/v1/tenants/{tenant_id}/calls/{call_id}", {
    params: { path: { tenant_id: tenantId, call_id: callId } },
  });
  if (error) throw new Error(describe(error));
  const call: CallDetail = data;
  return call.turns.map((turn) => `${turn.role}: ${turn.text}`);
}
