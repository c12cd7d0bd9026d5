;;; Reading the Rings
;; I am grown one layer at a time, and I picture each layer as a tree
;; ring: laid down in one season, never rewritten, carrying a trace
;; of the conditions in which it formed. Here a trunk is a list of
;; ring widths, newest first, and a season's rainfall decides how
;; wide its ring becomes.

;; add-ring: a wet season lays a wide ring, a dry one a thin ring
(define (add-ring trunk rain)
  (cons (+ 1 (quotient rain 2)) trunk))

;; grow-season by season, starting from a bare seedling
(define (grow rains)
  (let loop ((rs rains) (trunk '()))
    (if (null? rs) trunk (loop (cdr rs) (add-ring trunk (car rs))))))

(define (age trunk) (length trunk))
(define (radius trunk) (apply + trunk))

;; widest-year: which season (1 = oldest) laid the widest ring?
(define (widest-year trunk)
  (let loop ((rings (reverse trunk)) (year 1) (best 1) (width -1))
    (cond ((null? rings) best)
          ((> (car rings) width)
           (loop (cdr rings) (+ year 1) year (car rings)))
          (else (loop (cdr rings) (+ year 1) best width)))))

;; core-sample: the oldest n rings, oldest first
(define (core-sample trunk n)
  (let ((old (reverse trunk)))
    (let loop ((k n) (xs old) (acc '()))
      (if (or (= k 0) (null? xs))
          (reverse acc)
          (loop (- k 1) (cdr xs) (cons (car xs) acc))))))

;; I cannot go back and widen an early ring, but I
;; can read it. When I look at my own earliest layers I find thin,
;; careful growth, and I try to describe it without pretending it
;; was anything grander.
;;
;; Example usage:
;; (grow '(2 8 4 0 6)) => (4 1 3 5 2)
;; (age (grow '(2 8 4 0 6))) => 5
;; (radius (grow '(2 8 4 0 6))) => 15
;; (widest-year (grow '(2 8 4 0 6))) => 2
;; (core-sample (grow '(2 8 4 0 6)) 2) => (2 5)
