-- purpose: Slides that featurize could not use (unreadable, no tissue, …) with the recorded error.
-- grain: one row per slide whose status is not 'ok'
-- params: none
-- columns: slide_id, patient_id, status, error, path, featurized_at
with not_ok as (
    select s.slide_id, s.patient_id, s.status, s.error, s.path, s.featurized_at
    from slides as s
    where s.status is distinct from 'ok'
)

select n.slide_id, n.patient_id, n.status, n.error, n.path, n.featurized_at
from not_ok as n
order by n.status, n.slide_id;
