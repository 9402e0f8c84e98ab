CREATE FUNCTION public.call_line_cutoffs(p_now timestamptz)
RETURNS TABLE (ringing_since timestamptz, talking_since timestamptz)
LANGUAGE sql IMMUTABLE AS $$
-- How long a live call holds a line, the one home of these limits. A call holds a line while it
-- is ringing (created after ringing_since, 3 minutes) or talking (answered after talking_since,
-- 4 h 05 min, the longest profile limit of 14,400 s plus a margin). Past that its final callback
-- was lost. Admission (call_limit_violation) stops counting it, and the worker's reconciliation
-- (app/services/reconciliation.py) asks Twilio how it ended.
SELECT p_now - interval '3 minutes', p_now - interval '4 hours 5 minutes'
$$
