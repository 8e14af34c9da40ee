-- purpose: How many slides and tiles each patient has, per tiling (bag sizes for patient-level MIL).
-- grain: one row per patient and tiling
-- params: none
-- columns: patient_id, tiling, n_slides, n_tiles, min_tiles_per_slide, max_tiles_per_slide
with per_slide as (
    select t.slide_id, t.tiling, count(*) as n_tiles
    from tiles as t
    group by t.slide_id, t.tiling
),

with_patient as (
    select
        coalesce(s.patient_id, nullif(regexp_extract(ps.slide_id, '^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})', 1), ''))
            as patient_id,
        ps.tiling,
        ps.slide_id,
        ps.n_tiles
    from per_slide as ps
    left join slides as s on s.slide_id = ps.slide_id
)

select
    w.patient_id,
    w.tiling,
    count(*) as n_slides,
    sum(w.n_tiles)::bigint as n_tiles,
    min(w.n_tiles) as min_tiles_per_slide,
    max(w.n_tiles) as max_tiles_per_slide
from with_patient as w
group by w.patient_id, w.tiling
order by w.patient_id, w.tiling;
