-- purpose: Per-slide quality control: status and error, MPP and its source, tile count and areas per tiling.
-- grain: one row per slide and tiling (a slide without tiles, e.g. a failed one: one row, tiling null)
-- params: none
-- columns: slide_id, patient_id, status, error, vendor, width, height, mpp_x, mpp_y, mpp_source,
--          objective_power, tiling, n_tiles, tile_area_mm2, tissue_area_mm2, mean_tissue_frac
-- tile_area_mm2 = Σ w·h·mpp_x·mpp_y / 1e6 over the slide's tiles; tissue_area_mm2 weighs each tile by its
-- tissue fraction. With overlapping tilings (ov > 0) tiles overlap, so both count shared area more than once.
with slide_rows as (
    select
        s.slide_id, s.patient_id, s.status, s.error, s.vendor, s.width, s.height,
        s.mpp_x, s.mpp_y, s.mpp_source, s.objective_power
    from slides as s
),

tile_stats as (
    select
        t.slide_id,
        t.tiling,
        count(*) as n_tiles,
        sum(t.w * t.h) as tile_px2,
        sum(t.w * t.h * t.tissue_frac) as tissue_px2,
        avg(t.tissue_frac) as mean_tissue_frac
    from tiles as t
    group by t.slide_id, t.tiling
)

select
    s.slide_id,
    s.patient_id,
    s.status,
    s.error,
    s.vendor,
    s.width,
    s.height,
    s.mpp_x,
    s.mpp_y,
    s.mpp_source,
    s.objective_power,
    ts.tiling,
    coalesce(ts.n_tiles, 0) as n_tiles,
    coalesce(ts.tile_px2 * s.mpp_x * s.mpp_y / 1e6, 0) as tile_area_mm2,
    coalesce(ts.tissue_px2 * s.mpp_x * s.mpp_y / 1e6, 0) as tissue_area_mm2,
    ts.mean_tissue_frac
from slide_rows as s
left join tile_stats as ts on ts.slide_id = s.slide_id
order by s.slide_id, ts.tiling;
